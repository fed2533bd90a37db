"""The local engine's machinery: model processes, and the kernel's registry of them.

``child`` is the model process itself (``python -m nbchat.backends.local.child``),
``process`` the kernel's handle on one (spawning it, the pipe protocol), ``loader``
starts one for a model id, ``registry`` keeps this kernel's loaded models.
``nbchat.backends.transformers`` is the engine built on them; docs/local-model.md
says why generation runs in a process of its own. Importing this imports no torch.
"""

PREFIX = "transformers"  # model ids are f"{PREFIX}:{hub id or local directory}"
ENV_MODEL = "NBCHAT_QWEN_MODEL"
