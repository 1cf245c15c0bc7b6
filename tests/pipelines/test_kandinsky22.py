"""pipelines/kandinsky22.py's sampling runs: no value is read back from the device inside the loops.

A host read (`.item()`, `bool(tensor)`, `.tolist()`, `.cpu()`) makes the CPU wait for the GPU at every step and
leaves the GPU idle while Python queues the next kernels. Tensors on the meta device have no values, so every
such read raises: a whole sampling run on meta proves there is none, with the models in the loop.
"""

import pytest
import torch

from dalle_nodes.models.clip import TextEmbeds
from dalle_nodes.models.prior import PriorConfig, PriorTransformer
from dalle_nodes.models.unet import KandinskyUNet, UNetConfig
from dalle_nodes.pipelines import kandinsky22, sampling
from tiny_repos import WIDTH, tiny_unet_config

META = torch.device("meta")


def text_on_meta(batch: int = 1) -> TextEmbeds:
    mask = torch.ones(batch, 77, dtype=torch.bool)
    mask[:, 5:] = False
    return TextEmbeds(torch.randn(batch, WIDTH), torch.randn(batch, 77, WIDTH), mask).to(META, torch.float32)


@pytest.mark.parametrize("negative", [False, True])
def test_prior_sampling_reads_nothing_back(negative: bool) -> None:
    with META:
        prior = PriorTransformer(PriorConfig(heads=2, head_dim=8, layers=2, embedding_dim=WIDTH))
    generator = torch.Generator().manual_seed(0)
    steps = []
    prompt = kandinsky22.PromptEmbeds("a cat", text_on_meta(), text_on_meta())
    embeds, negative_embeds = kandinsky22.prior_sample(
        lambda: prior,
        prompt,
        kandinsky22.PromptEmbeds("a dog", text_on_meta(), text_on_meta()) if negative else None,
        batch_size=2,
        guidance=4.0,
        schedule=sampling.prior_schedule(4),
        generator=generator,
        callback=lambda i, total, x: steps.append(i),
    )
    assert embeds.device == META and embeds.shape == (2, WIDTH)
    assert (negative_embeds is not None) == negative
    assert steps == [0, 1, 2, 3]


@pytest.mark.parametrize("sampler", sampling.DECODER_SAMPLERS)
@pytest.mark.parametrize("image_to_image", [False, True])
def test_decoder_sampling_reads_nothing_back(sampler: str, image_to_image: bool) -> None:
    with META:
        unet = KandinskyUNet(UNetConfig.from_diffusers(tiny_unet_config()))
    embeds = kandinsky22.ImageEmbeds(torch.randn(2, WIDTH, device=META), torch.randn(2, WIDTH, device=META))
    latent = {"samples": torch.randn(2, 4, 16, 16, device=META)} if image_to_image else None
    schedule = sampling.decoder_schedule(sampler, 6, denoise_strength=0.5 if image_to_image else 1.0)
    generator = torch.Generator().manual_seed(0)
    x = kandinsky22.decoder_start(embeds, schedule, (16, 16), latent, generator, META, torch.float32)
    steps = []
    latents = kandinsky22.decoder_sample(
        lambda: unet, embeds, x, schedule, 4.0, generator, callback=lambda i, total, x: steps.append(i)
    )
    assert latents.device == META and latents.shape == (2, 4, 16, 16)
    assert steps == list(range(3 if image_to_image else 6))


def test_a_host_read_would_be_caught() -> None:
    """The premise of the tests above: reading a meta tensor's value fails."""
    with pytest.raises((RuntimeError, NotImplementedError)):
        torch.ones(2, device=META).sum().item()
    with pytest.raises((RuntimeError, NotImplementedError)):
        bool(torch.ones((), device=META) > 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_start_is_rounded_as_diffusers_rounds_it(dtype) -> None:
    """diffusers' prepare_latents casts the noise to the UNet's dtype, then scales it (euler_ancestral's first sigma
    is about 14.6); image-to-image noises the latent in that dtype."""
    embeds = kandinsky22.ImageEmbeds(torch.zeros(2, WIDTH), torch.zeros(2, WIDTH))
    schedule = sampling.decoder_schedule("euler_ancestral", 10)
    cpu = torch.device("cpu")
    x = kandinsky22.decoder_start(embeds, schedule, (8, 8), None, torch.Generator().manual_seed(5), cpu, dtype)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    assert schedule.init_noise_sigma > 10 and x.dtype == dtype
    assert torch.equal(x, noise.to(dtype) * schedule.init_noise_sigma)

    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    schedule = sampling.decoder_schedule("ddpm", 10, denoise_strength=0.5)
    x = kandinsky22.decoder_start(
        embeds, schedule, None, {"samples": latent}, torch.Generator().manual_seed(5), cpu, dtype
    )
    expected = sampling.noise_latent(latent.to(dtype).expand(2, -1, -1, -1), schedule, torch.Generator().manual_seed(5))
    assert x.dtype == dtype and torch.equal(x, expected)
