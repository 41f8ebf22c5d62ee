"""hbat: Ray-based RLHF orchestration with Hybrid Alignment Training.

The repository keeps the architecture visible as top-level folders
(`objectives/`, `actors/`, `orchestrator/`, `deploy/`, `models/`); they
install as sub-packages of this namespace (see pyproject.toml).
"""

__version__ = "0.1.0"
