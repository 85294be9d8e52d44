"""algd-runtime: train, export and deploy ALGD safe diffusion policies."""

__version__ = "0.1.0"
