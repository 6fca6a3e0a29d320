"""The features stage: fit the feature pipeline (``raypipe.model.features``) on the training split."""
