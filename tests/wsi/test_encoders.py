import numpy as np
import pytest
import torch

from stromalens.wsi.encoders import get_encoder, list_encoders, load_state_dict, sha256_file

#: Entries too large for the default tier (forward pass checked under -m slow).
LARGE = {"openclip-vit-l-14"}
#: Transformer entries built one block deep here (full size: test_encoders_published.py).
DEEP = {"uni", "uni2-h", "virchow2", "h-optimus-0", "h-optimus-1", "prov-gigapath", "phikon-v2",
        "conch", "plip"}  # fmt: skip
#: Precision names of the metadata records.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _tiles(n=2, size=224):
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in LARGE else n for n in list_encoders()],
)
def test_every_registered_encoder_runs_forward(name):
    depth = {"_depth": 1} if name in DEEP else {}
    encoder = get_encoder(name, weights="random", **depth)
    model, transforms, precision = encoder
    assert precision == DTYPES[encoder.info.precision]
    size = encoder.info.input_px
    x = transforms(_tiles(size=size))
    # synthclip shrinks its 224-px tiles to its own small input; the others take them as they are
    assert x.shape == (2, 3, transforms.size, transforms.size)
    feats = encoder.encode_images(_tiles(size=size))
    assert feats.shape == (2, encoder.embed_dim) and encoder.embed_dim == encoder.info.embed_dim
    assert torch.isfinite(feats).all()
    assert encoder.has_text == encoder.info.has_text
    if encoder.has_text and name != "conch":  # CONCH's tokenizer file is the user's
        text = encoder.encode_texts(["fibrous stroma", "tumour cells", "lymphocytes"])
        assert text.shape == (3, encoder.embed_dim)
    elif not encoder.has_text:
        with pytest.raises(ValueError, match="no text tower"):
            encoder.encode_texts(["x"])


def test_unknown_encoder_and_missing_weights_are_named():
    with pytest.raises(ValueError, match="no-such-encoder"):
        get_encoder("no-such-encoder")
    with pytest.raises(ValueError, match="needs weights"):
        get_encoder("openclip-vit-b-32")
    with pytest.raises(ValueError, match="allow_download"):
        get_encoder("quiltnet-b-32", weights="hub")


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "dir"])
def test_local_checkpoint_round_trip_records_sha256(tmp_path, random_synthclip, fmt):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in random_synthclip.model.state_dict().items()}
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(state, str(path))
        file = path
    elif fmt == "pt":
        path = tmp_path / "w.pt"
        torch.save({"state_dict": state}, path)
        file = path
    else:
        path = tmp_path / "snapshot"
        path.mkdir()
        file = path / "open_clip_model.safetensors"
        save_file(state, str(file))
    loaded = get_encoder("synthclip", weights=path)
    assert loaded.weights_sha256 == sha256_file(file)
    tiles = _tiles()
    assert torch.allclose(loaded.encode_images(tiles), random_synthclip.encode_images(tiles))
    _, sha = load_state_dict(path)
    assert sha == loaded.weights_sha256


def test_pickled_code_in_a_checkpoint_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"x": Evil()}, fh, protocol=2)
    # refused in one line, without torch's advice to retry with weights_only=False
    with pytest.raises(ValueError, match="refused: it holds Python objects") as info:
        load_state_dict(path)
    assert "weights_only=False" not in str(info.value)


def _write_clip_tokenizer(directory):
    """CLIP's BPE tokenizer files (vocab.json, merges.txt) from open_clip's bundled vocabulary.

    PLIP ships OpenAI CLIP's tokenizer; open_clip bundles the same byte-pair vocabulary, so the
    Hugging Face tokenizer written here is the real one, not a stand-in.
    """
    import json

    from open_clip.tokenizer import SimpleTokenizer

    bpe = SimpleTokenizer()
    specials = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {specials.get(token, token): index for token, index in bpe.encoder.items()}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(pair) for pair in merges) + "\n"
    )


def test_plip_loads_from_a_local_snapshot_directory(tmp_path):
    """PLIP's own path: CLIPModel + CLIPTokenizer from a snapshot folder, sha256 recorded."""
    transformers = pytest.importorskip("transformers", reason="plip needs transformers")
    import open_clip

    random = get_encoder("plip", weights="random", _depth=1)
    snapshot = tmp_path / "plip"
    random.model.save_pretrained(snapshot)
    _write_clip_tokenizer(snapshot)
    loaded = get_encoder("plip", weights=snapshot)
    assert loaded.weights_sha256 == sha256_file(snapshot / "model.safetensors")
    tiles = _tiles()
    assert torch.allclose(loaded.encode_images(tiles), random.encode_images(tiles))
    # The tokenizer agrees with open_clip's reference tokenizer on a prompt.
    prompt = "cancer-associated fibroblasts mixed with immune cells"
    ids = transformers.CLIPTokenizer.from_pretrained(snapshot)([prompt])["input_ids"][0]
    reference = open_clip.tokenize([prompt])[0]
    assert ids == reference[reference > 0].tolist()
    text = loaded.encode_texts([prompt, "tumour cells"])
    assert text.shape == (2, loaded.embed_dim) and torch.isfinite(text).all()


def test_random_weights_are_the_same_in_every_build():
    """``weights="random"`` draws from a fixed seed, whatever the global torch state."""
    import torch

    torch.manual_seed(123)
    a = get_encoder("synthclip", weights="random")
    torch.manual_seed(456)
    b = get_encoder("synthclip", weights="random")
    for (name, x), (_, y) in zip(
        a.model.state_dict().items(), b.model.state_dict().items(), strict=True
    ):
        assert torch.equal(x, y), name
