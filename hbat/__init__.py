"""hbat: Ray-based RLHF orchestration with Hybrid Alignment Training.

The repository keeps the architecture visible as top-level folders
(`objectives/`, `actors/`, `orchestrator/`, `deploy/`, `models/`); the
entries next to this file are symbolic links to them, so `hbat.actors` is
`actors/` both in the source tree and in an installed wheel
(docs/architecture.md §1).
"""

__version__ = "0.1.0"
