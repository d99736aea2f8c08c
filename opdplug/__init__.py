"""opdplug: on-policy distillation of language models, built as plugins.

Plugin authors need ``hookimpl`` (and the data model in ``opdplug.types``)::

    from opdplug import hookimpl

    @hookimpl
    def opd_register_divergences(register):
        register("mine", MyDivergence)
"""
from .hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]
