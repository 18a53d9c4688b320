"""The tenancy contract shared by the API, the worker and the operator.

Resource models, policy arithmetic, the registry format and the API key format live here and
nowhere else; every service imports them from this package.
"""
