//! What the benchmarks share.

use edgefuse_models::manifest::{ChannelOrder, Preprocess, ResizePolicy};

/// CLIP's preprocessing at `size`×`size`: shortest side resized, centre crop, CLIP's mean and std.
pub fn clip_spec(size: u32) -> Preprocess {
    Preprocess {
        image_size: [size, size],
        resize: ResizePolicy::ShortestSideCenterCrop,
        mean: [0.48145466, 0.4578275, 0.40821073],
        std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
        channel_order: ChannelOrder::Rgb,
    }
}
