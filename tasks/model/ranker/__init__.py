"""The DCN-V2 ranker (issue 12): P(bookmark | shown) for a user's recall candidates.

``features`` builds the point-in-time raw inputs of the ``rank`` signature, ``rows`` the
training rows, ``config`` the knobs, ``model`` the Keras model and its export, ``stage`` the
training stage (``train_ranker``, run by ``recsys_train``), ``saved`` the exported model's
probe request and checks (deploy verification, warmup, the gate's scorer). Registry, gate
and deploy: ``model_registry.registry`` (``model=``), ``model_registry.ranker_gate``,
``tasks.serving.deploy`` (``model_name=``).
"""
