"""VLM backends: a batch of prompts with frames in, answers out."""
