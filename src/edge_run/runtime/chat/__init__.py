"""Chat: the model's template rendered in a sandbox, and the conversation kept within the context."""
