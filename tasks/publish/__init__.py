"""The publish stage: bundle, Hugging Face export, GCS, MLflow registry, model card, lineage."""
