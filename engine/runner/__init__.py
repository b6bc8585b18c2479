"""Turns a scheduled batch into tensors, runs the model (eagerly or from CUDA graphs) and samples."""
