"""HDDM core: the Prefect-free library of Heterogeneous Decentralized Diffusion Models.

Time convention, stated once for the whole project: t in [0, 1], t = 0 is data, t = 1 is noise,
and every schedule writes x_t = alpha(t) x0 + sigma(t) eps. Samplers integrate from t = 1 to 0.
"""

__version__ = "0.1.0"
