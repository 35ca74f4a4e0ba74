r"""Uniform-state diffusion seen as the argmax of Gaussian diffusion on one-hot vectors (Duo; Sahoo et al.,
"The Diffusion Duality", ICML 2025), and the two things that view buys: a lower-variance start of training
(the curriculum) and deterministic trajectories for a few-step student (Discrete Consistency Distillation).

Take a clean token x among K symbols as the one-hot vector e_x and diffuse it as a Gaussian (variance
preserving):

    w_t = alpha~_t e_x + sigma~_t eps,   eps ~ N(0, I_K),   sigma~_t = sqrt(1 - alpha~_t^2)    <- ``gaussian_latent``

Its argmax z_t = argmax_k w_t^k is a token. By symmetry every wrong symbol is equally likely, so z_t is
distributed as the uniform-state process q(z_t | x) = alpha_t e_x + (1 - alpha_t) / K, with

    P(z_t = x) = int phi(z - nu) Phi(z)^(K-1) dz,   nu = alpha~_t / sigma~_t                <- ``argmax_accuracy``
    alpha_t = T(alpha~_t) = (K P(z_t = x) - 1) / (K - 1)                                   <- ``DiffusionTransform``

(the true coordinate is nu + N(0, 1), each of the K - 1 others N(0, 1), and the true one must beat them all).
T, the diffusion transformation, is a one-dimensional integral: we compute it once per K on a grid of the
log signal-to-noise ratio lambda = log nu^2 by quadrature and interpolate; it is increasing, so its inverse is
an interpolation in the same table (``alpha_tilde``). A uniform-state run keeps its own schedule alpha_t and
asks the table which alpha~_t gives it, so the Gaussian view changes nothing about which states training sees.

The curriculum (Duo Sec. 4.1) feeds the network softmax(w_t / tau) (a point in the simplex, times the embedding
table) instead of the one-hot of argmax(w_t), while the loss is still the uniform-state NELBO at z_t = argmax
w_t. As tau -> 0 the softmax becomes the one-hot of z_t, the discrete process; a larger tau tells the network
how far each symbol was from winning, a lower-variance signal early in training. ``curriculum_temperature``
anneals tau log-linearly over the curriculum's steps.

Discrete Consistency Distillation (Duo Sec. 5): one eps draws a whole trajectory w_t (t in [0, 1]) from x, and
its argmax is a trajectory of the uniform-state process, coupled so that z_s for s < t is z_t with some
positions moved toward x. ``trajectory`` returns z at two times from one eps.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

# the log signal-to-noise ratio lambda = log(alpha~^2 / sigma~^2) the table covers: at -20 the argmax is
# right with probability 1/K + O(e^-10) (alpha ~ 4e-5 for K = 65); at +20 it is always right in float64
LAMBDA_MIN, LAMBDA_MAX, TABLE_POINTS = -20.0, 20.0, 4001
QUADRATURE_POINTS = 6001


def argmax_accuracy(nu: torch.Tensor, K: int) -> torch.Tensor:
    """P(argmax(nu e_x + eps) = x) for eps ~ N(0, I_K): int phi(z - nu) Phi(z)^(K-1) dz, by the trapezoid rule
    on a grid that covers the integrand's mass (float64; ``nu`` any shape, >= 0)."""
    nu = nu.double()
    lo, hi = -12.0, float(nu.max()) + 12.0
    z = torch.linspace(lo, hi, QUADRATURE_POINTS, dtype=torch.float64)
    shape = (*nu.shape, 1)
    density = torch.exp(-0.5 * (z - nu.reshape(shape)) ** 2 - 0.5 * math.log(2 * math.pi))
    integrand = density * torch.exp((K - 1) * torch.special.log_ndtr(z))
    return torch.trapezoid(integrand, z, dim=-1).clamp(1.0 / K, 1.0)


class DiffusionTransform:
    """alpha = T(alpha~) for K symbols, tabulated on the log-SNR grid, and its inverse. Tensors in, tensors out,
    on the input's device and dtype. The table is built once per K in a process (about a second)."""

    def __init__(self, K: int):
        if K < 2:
            raise ValueError(f"the diffusion transformation needs at least 2 symbols, got {K}")
        self.K = K
        self.lam, self.alphas = _table(K)

    def alpha(self, alpha_tilde: torch.Tensor) -> torch.Tensor:
        """T(alpha~): the uniform-state alpha whose process is the argmax of the Gaussian one at alpha~."""
        a = alpha_tilde.double().clamp(1e-12, 1.0 - 1e-16)
        lam = torch.log(a ** 2) - torch.log1p(-a ** 2)
        return _interpolate(lam, self.lam, self.alphas).to(alpha_tilde)

    def alpha_tilde(self, alpha: torch.Tensor) -> torch.Tensor:
        """T^-1(alpha): the Gaussian alpha~ whose argmax is the uniform-state process at alpha (alpha in [0, 1];
        the ends of the table clamp: alpha~ of about 5e-5 for alpha = 0, about 1 - 2e-9 for alpha = 1)."""
        lam = _interpolate(alpha.double(), self.alphas, self.lam)
        return torch.sigmoid(lam).sqrt().to(alpha)


@lru_cache(maxsize=8)
def _table(K: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(lambda grid, T at each point): increasing in both, so either can be interpolated against the other."""
    lam = torch.linspace(LAMBDA_MIN, LAMBDA_MAX, TABLE_POINTS, dtype=torch.float64)
    alphas = torch.cat([(K * argmax_accuracy(torch.exp(0.5 * part), K) - 1.0) / (K - 1.0)
                        for part in lam.split(500)])
    # quadrature noise must not break the monotone order the inverse relies on
    return lam, torch.cummax(alphas, 0).values


def _interpolate(x: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear y(x) through (xs, ys), xs increasing (ties allowed), clamped at the ends."""
    xs, ys = xs.to(x.device), ys.to(x.device)
    flat = x.reshape(-1).clamp(float(xs[0]), float(xs[-1]))
    i = torch.searchsorted(xs, flat, right=True).clamp(1, len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    w = torch.where(x1 > x0, (flat - x0) / (x1 - x0).clamp_min(1e-300), torch.ones_like(flat))
    return (y0 + w * (y1 - y0)).reshape(x.shape)


def gaussian_latent(x: torch.Tensor, alpha_tilde: torch.Tensor, K: int, eps: torch.Tensor) -> torch.Tensor:
    """w = alpha~ e_x + sigma~ eps: (n, L) tokens, (n,) or (n, L) alpha~, (n, L, K) eps -> (n, L, K)."""
    a = alpha_tilde if alpha_tilde.dim() == x.dim() else alpha_tilde[:, None].expand(x.shape)
    a = a[..., None].to(eps.dtype)
    one_hot = torch.nn.functional.one_hot(x, K).to(eps.dtype)
    return a * one_hot + (1.0 - a ** 2).clamp_min(0.0).sqrt() * eps


def draw_eps(x: torch.Tensor, K: int, generator: torch.Generator) -> torch.Tensor:
    """The Gaussian noise of one trajectory per position: (n, L, K)."""
    return torch.randn((*x.shape, K), generator=generator, device=x.device)


def trajectory(x: torch.Tensor, alpha_t: torch.Tensor, alpha_s: torch.Tensor, K: int,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_t, z_s): the argmaxes of one Gaussian trajectory from ``x`` at two uniform-state alphas (one per row
    or per position), each distributed as the process there, coupled through their shared eps (Discrete
    Consistency Distillation)."""
    T = DiffusionTransform(K)
    eps = draw_eps(x, K, generator)
    return (gaussian_latent(x, T.alpha_tilde(alpha_t.double()).float(), K, eps).argmax(-1),
            gaussian_latent(x, T.alpha_tilde(alpha_s.double()).float(), K, eps).argmax(-1))


def curriculum_state(x: torch.Tensor, alpha: torch.Tensor, K: int, tau: float,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_t, softmax(w_t / tau)) for (n, L) tokens at the uniform-state ``alpha`` of each row (n,): the discrete
    state the NELBO is taken at, distributed as q(z_t | x), and the soft input the curriculum feeds the network."""
    w = gaussian_latent(x, DiffusionTransform(K).alpha_tilde(alpha.double()).float(), K, draw_eps(x, K, generator))
    return w.argmax(-1), tempered(w, tau)


def curriculum_temperature(step: int, steps: int, tau_start: float, tau_end: float) -> float:
    """The softmax temperature at ``step`` of a curriculum of ``steps``: log-linear from ``tau_start`` to
    ``tau_end`` (Duo anneals log10 tau from -1 to -2); 0 once the curriculum is over (the argmax)."""
    if step >= steps:
        return 0.0
    frac = step / steps
    return math.exp((1.0 - frac) * math.log(tau_start) + frac * math.log(tau_end))


def tempered(w: torch.Tensor, tau: float) -> torch.Tensor:
    """softmax(w / tau) over the symbols: the curriculum's soft input (tau > 0)."""
    return (w / tau).softmax(-1)
