"""Students: acoustic models (model.py, encoders.py) and SSL students (ssl.py, supernet.py)."""

from speechdistill.students import supernet  # noqa: F401  registers the "supernet" SSL student kind
