//! SageMaker: the port (a trait) the reconcilers use, and its adapter on aws-sdk-sagemaker.
