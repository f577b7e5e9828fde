"""Amazon SageMaker: launch training jobs (`launch`), the container entry point (`entry`), endpoints (`deploy`).

`entry` runs inside the training container and imports neither the SageMaker SDK nor boto3.
"""
