"""OpenUni: a frozen InternVL3 plus learned queries conditioning a SANA diffusion transformer.

The public classes load lazily, so `import openuni` (and `openuni --help`) stays quick.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "OpenUniPipeline": "openuni.pipeline",
    "OpenUniPipelineOutput": "openuni.pipeline",
    "OpenUniConnector": "openuni.connector",
    "OpenUni": "openuni.model",
    "load_pipeline": "openuni.pipeline",
    "OpenUniError": "openuni.errors",
    "VARIANTS": "openuni.variants",
    "InternVLChat": "openuni.chat",
    "load_image": "openuni.images",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'openuni' has no attribute {name!r}")
