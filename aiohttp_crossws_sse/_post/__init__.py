"""The POST channel of bidirectional mode (being moved here from ``_bidir``)."""
