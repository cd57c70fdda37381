"""The DCN-V2 ranker (issue 12): P(bookmark | shown) for a user's recall candidates.

``features`` builds the point-in-time raw inputs of the ``rank`` signature, ``rows`` the
training rows, ``config`` the knobs, ``model`` the Keras model and its export, ``stage`` the
training stage (``train_ranker``). Nothing here is wired into the DAGs, registry or API yet.
"""
