"""The model: the Llama-family forward pass, its layers and weight formats, and the start-up
measurements that pick the fastest kernels for them."""
