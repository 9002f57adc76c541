"""realflow: a dataflow-graph execution engine for LLM post-training.

`graphs/` and `interfaces/` sit at the top of the repository (they are the
plug-in points users read first) and install as `realflow.graphs` and
`realflow.interfaces`.
"""
from setuptools import find_packages, setup

packages = find_packages(include=["realflow", "realflow.*"])
package_dir = {}
for folder in ("graphs", "interfaces"):
    top = f"realflow.{folder}"
    packages.append(top)
    package_dir[top] = folder
    for sub in find_packages(where=folder):
        packages.append(f"{top}.{sub}")
        package_dir[f"{top}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"

setup(
    name="realflow",
    version="0.1.0",
    description="Dataflow-graph execution engine for LLM post-training",
    python_requires=">=3.10",
    packages=packages,
    package_dir=package_dir,
    package_data={"realflow.assets": ["tokenizer/*.json", "*.json", "*.jsonl"]},
    include_package_data=True,
    install_requires=[
        # The CPU wheel torch==2.13.0 is taken via constraints.txt; the range keeps
        # a resolver from pulling an untested major release.
        "torch>=2.4,<2.15",
        "transformers>=4.51,<6",
        "tokenizers>=0.21",
        "datasets>=3.0,<6",
        "networkx>=3.2",
        "pyzmq>=25",
        "omegaconf>=2.3,<2.5",
        "safetensors>=0.4",
        "tqdm>=4.66",
        "numpy>=1.26",
        "matplotlib>=3.8",  # realflow graph --out x.png
        "math-verify>=0.7,<1",  # math answer verification (rewards)
        # TensorBoard scalars of every run (run.tensorboard); torch.utils.tensorboard
        # imports in ~0.3 s. Below 3: a major release may change the event-file API.
        "tensorboard>=2.16,<3",
    ],
    extras_require={
        "test": ["pytest>=8", "hypothesis>=6.100", "pytest-timeout>=2.3"],
        "bench": ["trl>=0.20"],
        "ray": ["ray[default]>=2.40"],
        "megatron": ["megatron-core==0.16.1"],
    },
    entry_points={"console_scripts": ["realflow=realflow.apps.cli:main"]},
)
