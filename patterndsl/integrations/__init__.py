"""Integrations with other libraries, each an optional extra (``pip install 'psparse[NAME]'``):
``transformers`` (:mod:`patterndsl.integrations.transformers`)."""
