"""Serving trained policies and reward models with Ray Serve.

* :mod:`hbat.deploy.openai_app` — OpenAI-compatible chat/completions/models
  app (``build_app``); transformers engine on CPU, ``ray.serve.llm`` (vLLM)
  on GPU via :mod:`hbat.deploy.vllm_backend`;
* :mod:`hbat.deploy.reward_app` — ``POST /v1/reward`` with Serve request batching;
* :mod:`hbat.deploy.cli` — the ``hbat serve`` subcommand;
* ``serve_config.yaml``, ``cluster.yaml``, ``rayjob.yaml``, ``rayservice.yaml``
  — Serve config, Ray cluster launcher and KubeRay manifests (see README.md).

Nothing heavy is imported here; import the submodules you need.
"""
