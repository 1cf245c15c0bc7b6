"""pipelines/kandinsky22/stages.py's sampling runs: no value is read back from the device inside the loops.

A host read (`.item()`, `bool(tensor)`, `.tolist()`, `.cpu()`) makes the CPU wait for the GPU at every step and
leaves the GPU idle while Python queues the next kernels. Tensors on the meta device have no values, so every
such read raises: a whole sampling run on meta proves there is none, with the models in the loop.
"""

import pytest
import torch

from dalle_nodes.models.clip import TextEmbeds
from dalle_nodes.models.prior import PriorConfig, PriorTransformer
from dalle_nodes.models.unet import KandinskyUNet, UNetConfig
from dalle_nodes.pipelines import sampling
from dalle_nodes.pipelines.kandinsky22 import stages, starts
from dalle_nodes.pipelines.kandinsky22.embeds import ImageEmbeds, PromptEmbeds
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
    prompt = PromptEmbeds("a cat", text_on_meta(), text_on_meta())
    embeds = stages.prior_stage(
        stages.StageModel.held(prior),
        lambda: torch.zeros(1, WIDTH, device=META),
        prompt,
        PromptEmbeds("a dog", text_on_meta(), text_on_meta()) if negative else None,
        stages.PriorRun(batch_size=2, guidance=4.0, schedule=sampling.prior_schedule(4)),
        generator=generator,
        callback=lambda i, total, x, x0: steps.append(i),
    )
    assert embeds.positive.device == META and embeds.positive.shape == (2, WIDTH)
    assert embeds.negative.device == META and embeds.negative.shape == (2, WIDTH)
    assert steps == [0, 1, 2, 3]


@pytest.mark.parametrize("sampler", sampling.DECODER_SAMPLERS)
@pytest.mark.parametrize("image_to_image", [False, True])
def test_decoder_sampling_reads_nothing_back(sampler: str, image_to_image: bool) -> None:
    with META:
        unet = KandinskyUNet(UNetConfig.from_diffusers(tiny_unet_config()))
    embeds = ImageEmbeds(torch.randn(2, WIDTH, device=META), torch.randn(2, WIDTH, device=META))
    start = starts.DecoderStart(latent=torch.randn(2, 4, 16, 16, device=META)) if image_to_image else None
    schedule = sampling.decoder_schedule(sampler, 6, denoise_strength=0.5 if image_to_image else 1.0)
    steps = []
    latents = stages.decoder_stage(
        stages.StageModel.held(unet),
        embeds,
        start or starts.DecoderStart((16, 16)),
        stages.DecoderRun(schedule, 4.0),
        torch.Generator().manual_seed(0),
        callback=lambda i, total, x, x0: steps.append(i),
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
    schedule = sampling.decoder_schedule("euler_ancestral", 10)
    cpu = torch.device("cpu")
    x, edit = starts.initial_latents(
        starts.DecoderStart((8, 8)), None, 2, schedule, torch.Generator().manual_seed(5), cpu, dtype
    )
    assert edit is None
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    assert schedule.init_noise_sigma > 10 and x.dtype == dtype
    assert torch.equal(x, noise.to(dtype) * schedule.init_noise_sigma)

    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    schedule = sampling.decoder_schedule("ddpm", 10, denoise_strength=0.5)
    start = starts.DecoderStart(latent=latent)
    x, _ = starts.initial_latents(start, None, 2, schedule, torch.Generator().manual_seed(5), cpu, dtype)
    expected = sampling.noise_latent(latent.to(dtype).expand(2, -1, -1, -1), schedule, torch.Generator().manual_seed(5))
    assert x.dtype == dtype and torch.equal(x, expected)
