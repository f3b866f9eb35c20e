"""Inference: running trained models outside training (ONNX export, prediction)."""
