"""Reading a model from its own files: Hugging Face config and safetensors headers, GGUF headers, sizes."""
