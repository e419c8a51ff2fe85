"""The model endpoint: SageMaker inference contract, continuous batching over many adapters, hot swap.

Never imports Django. Clients use `serving.client`.
"""
