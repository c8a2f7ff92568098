"""A sample application written for ML Server's Python SDK.

It imports only the SDK (``azureml.deploy``); nothing here knows localbatch.
The tests run it unchanged through the ``azureml`` drop-in.
"""
