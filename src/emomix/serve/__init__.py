"""The HTTP service and web page over a trained run (``emomix serve``; see docs/serving.md).

:func:`~emomix.serve.app.create_app` builds the FastAPI app from a predictor and
:class:`~emomix.serve.app.ServiceLimits`; :mod:`emomix.serve.server` runs it with uvicorn.
"""

from emomix.serve.app import ServiceLimits, create_app

__all__ = ["ServiceLimits", "create_app"]
