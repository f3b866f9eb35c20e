"""emomix: emotion recognition from speech and transcript with mixture-of-experts fusion."""

__version__ = "0.1.0"
