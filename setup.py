"""Package layout that pyproject.toml cannot express: the `kernels/` folder is imported as
`lolcats_kernels`, since a top-level package called `kernels` would be mistaken by transformers
for the Hugging Face hub-kernels package."""

from setuptools import find_packages, setup

kernel_packages = ["lolcats_kernels"] + [f"lolcats_kernels.{p}" for p in find_packages("kernels")]
setup(
    packages=find_packages(include=["lolcats_core", "lolcats_core.*"]) + kernel_packages,
    package_dir={"lolcats_kernels": "kernels"},
)
