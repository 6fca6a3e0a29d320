"""The model a registry version holds: fitted features, model formats, the torch zoo, the predictor.

Shared by the stages that build it (features, train), the stages and services that use it
(evaluate, register, serve, export) and nothing else: it imports only the foundation.
"""
