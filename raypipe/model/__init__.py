"""The model a registry version holds: fitted features, model formats, the torch zoo, the predictor.

Shared by the stages that build it and the ones that use it (and by serving); it imports only the foundation."""
