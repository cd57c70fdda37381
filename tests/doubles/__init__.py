"""Test doubles and harnesses: stand-ins for what cannot run here, fixture models and data,
the ``dag.test()`` harness. Production code (tasks/, model_registry/, plugins/, api/, dags/)
never imports this package; tests/unit/test_architecture.py checks that.
"""
