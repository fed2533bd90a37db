"""Model engines behind one protocol (``base.Backend``): Ollama over HTTP, Qwen3 in the kernel."""
