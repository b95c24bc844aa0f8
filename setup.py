"""Installation script for gluon_robust."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = {}
exec((HERE / "gluon_robust" / "_version.py").read_text(), VERSION)

setup(
    name="gluon_robust",
    version=VERSION["__version__"],
    description="Adversarial-robustness toolkit for Apache MXNet Gluon and GluonCV",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.8, <3.12",
    packages=find_packages(include=["gluon_robust", "gluon_robust.*"]),
    package_data={
        "gluon_robust": ["model_configs/*.yaml", "model_configs/*.params", "model_configs/*.md"],
        "gluon_robust.data": ["*.npz", "*.md"],
    },
    # mxnet is an extra so that users can choose a CPU or a CUDA build.
    install_requires=[
        "numpy>=1.16,<1.24",
        "gluoncv==0.10.5.post0",
        "opencv-python<4.9",
        "matplotlib<3.9",
        "pandas<2.1",
        "scipy<1.12",
        "pyyaml>=5.1",
        "tqdm>=4.40",
    ],
    extras_require={
        "cpu": ["mxnet==1.9.1"],
        "gpu": ["mxnet-cu112==1.9.1"],
        # evaluate --cluster (Dask distributed, see docs/distributed.md); the tests run it on a LocalCluster
        "cluster": ["dask[distributed]>=2024.1"],
        "test": ["pytest>=7", "hypothesis>=6.100", "mlxtend<0.24", "scikit-image<0.22", "dask[distributed]>=2024.1"],
    },
    entry_points={"console_scripts": ["gluon-robust=gluon_robust.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3.8",
        "Programming Language :: Python :: 3.9",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
