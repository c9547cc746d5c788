"""The full-size text encoders' published configs (``config.json`` values), shared by the families'
full-size configs in ``gal.families.published``."""

# -- text encoders -------------------------------------------------------------------------------------
CLIP_L = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_attention_heads=12,
    num_hidden_layers=12,
    vocab_size=49408,
    max_position_embeddings=77,
    projection_dim=768,
    hidden_act="quick_gelu",
)
CLIP_G = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_attention_heads=20,
    num_hidden_layers=32,
    vocab_size=49408,
    max_position_embeddings=77,
    projection_dim=1280,
    hidden_act="gelu",
)
T5_XXL = dict(
    d_model=4096,
    d_ff=10240,
    d_kv=64,
    num_heads=64,
    num_layers=24,
    vocab_size=32128,
    feed_forward_proj="gated-gelu",
    relative_attention_num_buckets=32,
)
# Qwen/Qwen3-4B, Qwen/Qwen3-8B (Z-Image, FLUX.2 klein 4B / 9B)
QWEN3_4B = dict(
    vocab_size=151936,
    hidden_size=2560,
    intermediate_size=9728,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    tie_word_embeddings=True,
)
QWEN3_8B = dict(
    vocab_size=151936,
    hidden_size=4096,
    intermediate_size=12288,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    tie_word_embeddings=False,
)
# Qwen/Qwen2.5-VL-7B-Instruct (Qwen-Image)
QWEN25_VL_7B_TEXT = dict(
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
)
QWEN25_VL_7B_VISION = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    out_hidden_size=3584,
    patch_size=14,
    spatial_merge_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
)
# Qwen/Qwen3-VL-4B-Instruct (Krea 2's encoder: text width 2560, 36 layers)
QWEN3_VL_4B_TEXT = dict(QWEN3_4B, rope_scaling={"rope_type": "default", "mrope_section": [24, 20, 20]})
QWEN3_VL_4B_VISION = dict(
    depth=24,
    hidden_size=1024,
    intermediate_size=4096,
    num_heads=16,
    out_hidden_size=2560,
    patch_size=16,
    spatial_merge_size=2,
    deepstack_visual_indexes=[5, 11, 17],
)
# mistralai/Mistral-Small-3.1-24B (FLUX.2 dev): the language model and its Pixtral vision tower
MISTRAL_SMALL_TEXT = dict(
    vocab_size=131072,
    hidden_size=5120,
    intermediate_size=32768,
    num_hidden_layers=40,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
)
PIXTRAL_VISION = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    head_dim=64,
    patch_size=14,
    image_size=1540,
)
# google/gemma-2-2b (Lumina 2)
GEMMA2_2B = dict(
    vocab_size=256000,
    hidden_size=2304,
    intermediate_size=9216,
    num_hidden_layers=26,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=256,
)
# meta-llama/Meta-Llama-3.1-8B-Instruct (HiDream-I1's fourth encoder: every layer's hidden states)
LLAMA31_8B = dict(
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=131072,
    rope_theta=500000.0,
    tie_word_embeddings=False,
)

# Qwen/Qwen3-VL-8B-Instruct (Ideogram 4's encoder: text width 4096, 36 layers; Ideogram4Pipeline loads the
# head-less Qwen3VLModel, the LM head is the optional prompt enhancer's)
QWEN3_VL_8B_TEXT = dict(
    vocab_size=151936,
    hidden_size=4096,
    intermediate_size=12288,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    rope_scaling={"rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": True},
    rope_theta=5000000,
)
QWEN3_VL_8B_VISION = dict(
    depth=27,
    hidden_size=1152,
    intermediate_size=4304,
    num_heads=16,
    out_hidden_size=4096,
    patch_size=16,
    spatial_merge_size=2,
    num_position_embeddings=2304,
    deepstack_visual_indexes=[8, 16, 24],
)
