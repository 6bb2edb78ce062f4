"""What MLflow runs to load a run's logged final model (MLflow's "models from code": no pickle);
the model itself is `SolverPolicy` (lsp_exp/run/final_model.py), which reads the run's weights."""
import mlflow

from lsp_exp.run.final_model import SolverPolicy

mlflow.models.set_model(SolverPolicy())
