"""The request model takes a datetime column's strings as validate does, and refuses the rest by name."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from raypipe.serve.request_model import request_model

SCHEMA = {"columns": {"signup": {"type": "datetime", "format": "iso", "nullable": False},
                      "paid_on": {"type": "datetime", "format": "dmy", "nullable": True},
                      "plan": {"type": "string", "nullable": True}},
          "features": {"numeric": [], "categorical": ["plan"], "datetime": ["signup", "paid_on"]},
          "id_columns": []}


def test_date_strings_in_the_columns_format_or_iso_are_accepted() -> None:
    Row = request_model(SCHEMA)
    for signup in ("2024-03-01", "2024-03-01 12:30:00", "2024-03-01T12:30:00Z", "2024-03-01T12:30:00+02:00"):
        assert Row(signup=signup).signup == signup
    assert Row(signup="2024-03-01", paid_on="13/03/2024").paid_on == "13/03/2024"
    assert Row(signup="2024-03-01", paid_on="2024-03-13").paid_on == "2024-03-13"
    assert Row(signup="2024-03-01").paid_on is None


@pytest.mark.parametrize("field, value, says", [
    ("signup", "31/31/2024", "not a date: '31/31/2024'"),
    ("signup", "01/03/2024", "not a date"),          # a slashed date in an ISO column: which order is unknown
    ("paid_on", "03/13/2024", "01/03/2024 (day/month)"),
    ("signup", 20240301, "string"),
])
def test_other_values_are_refused_naming_the_column(field, value, says) -> None:
    Row = request_model(SCHEMA)
    row = {"signup": "2024-03-01", field: value}
    with pytest.raises(ValidationError) as info:
        Row(**row)
    assert field in str(info.value) and says in str(info.value)
