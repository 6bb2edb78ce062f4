"""The final model as an MLflow *logged model*, so the UI's model views (the experiment's Models
tab, the run's "Logged models") list it, and one call loads it back:

    import mlflow
    mlflow.set_tracking_uri("sqlite:///outputs/mlflow.db")           # the run's store
    policy = mlflow.pyfunc.load_model("models:/<model id>")           # lsp-train prints the id
    policy.predict(["3+4*2"])                                          # the Solver's greedy answers
    model, tokenizer = policy.unwrap_python_model().model, policy.unwrap_python_model().tokenizer

The logged model holds no second copy of the weights: it points at the run's `model/` artifact
(the model in Hugging Face format, or under LoRA the adapter alone, over the base model it names),
which `load_context` downloads and loads. The logged model's code is `final_model_code.py` (MLflow's
models from code, no pickle); loading it imports this package. `init_from=<run id>` and
`lsp-eval run=<run id>` read the weights alone.
"""
from __future__ import annotations

import importlib.metadata
import tempfile
from pathlib import Path

import mlflow
import mlflow.pyfunc
from mlflow.entities import LoggedModelOutput
from mlflow.models import Model

from lsp_exp.core.generation import chat_prompts, generate
from lsp_exp.core.models import HFModel

MODEL_NAME = "policy"
# on the model's page
SHOWN_PARAMS = ("game.name", "algorithm.name", "model.name", "reward.name", "kl.beta", "optim.lr", "seed")


class SolverPolicy(mlflow.pyfunc.PythonModel):
    """The trained policy as a pyfunc: `predict(prompts) -> answers` (greedy, the chat template)."""

    def load_context(self, context) -> None:
        weights = Path(mlflow.artifacts.download_artifacts(artifact_uri=context.model_config["weights"]))
        loader = HFModel(dtype=context.model_config.get("dtype", "float32"))
        base = context.model_config.get("base_model") if (weights / "adapter_config.json").is_file() else None
        self.model = loader.policy(base or str(weights), adapter=str(weights) if base else None).eval()
        self.tokenizer = loader.tokenizer(base or str(weights))
        self.max_new_tokens = int(context.model_config.get("max_new_tokens", 64))

    def predict(self, context, model_input: list[str], params=None) -> list[str]:
        prompts = list(model_input["prompt"] if hasattr(model_input, "columns") else model_input)
        return generate(self.model, self.tokenizer, chat_prompts(self.tokenizer, prompts),
                        max_new_tokens=self.max_new_tokens, do_sample=False).texts


def log_model_entry(logger, base_model: str | None, dtype: str, max_new_tokens: int) -> str:
    """Log the run's final model (its `model/` artifact) as an MLflow logged model linked to the run
    (`base_model`: what a LoRA adapter goes over); returns the model's id."""
    requirements = [f"{name}=={importlib.metadata.version(name).split('+')[0]}"
                    for name in ("torch", "transformers", "peft", "mlflow")]
    client = mlflow.MlflowClient(logger._tracking_uri)
    run = client.get_run(logger.run_id)
    model = client.create_logged_model(  # in the run's experiment (MLflow's log_model would use the active one)
        run.info.experiment_id, name=MODEL_NAME, source_run_id=logger.run_id, model_type="causal-lm",
        params={k: v for k, v in run.data.params.items() if k in SHOWN_PARAMS},
        tags={"run_name": run.info.run_name or "", **{k: run.data.tags[k] for k in ("game", "algorithm", "seed")
                                                        if k in run.data.tags}})
    with tempfile.TemporaryDirectory() as tmp:  # saved here, then logged: no global MLflow state is touched
        mlflow.pyfunc.save_model(
            Path(tmp) / "model", python_model=str(Path(__file__).with_name("final_model_code.py")),
            mlflow_model=Model(run_id=logger.run_id, model_id=model.model_id, model_uuid=model.model_id,
                               artifact_path=model.artifact_location),
            pip_requirements=requirements,
            model_config={"weights": f"runs:/{logger.run_id}/model", "base_model": base_model, "dtype": dtype,
                          "max_new_tokens": max_new_tokens})
        client.log_model_artifacts(model.model_id, str(Path(tmp) / "model"))
    client.log_outputs(logger.run_id, [LoggedModelOutput(model.model_id, step=0)])
    client.finalize_logged_model(model.model_id, "READY")
    return model.model_id
