"""Live backends: each adapter implements thundersim.core.backend.Backend over a real engine.

The vLLM adapter (HTTP to an OpenAI-compatible vLLM server) lands with live mode.
"""
