"""Built-in annotator families; importing this package registers them (see ``ranker.annotators``)."""

from ranker.features import (  # noqa: F401
    blocklist,
    generation,
    generic,
    language,
    lexical,
    lm,
    nidf,
    retrieval,
    specificity,
    surface,
    turn,
)
