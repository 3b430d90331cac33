//! One folder per model family (`config`, `model`, `processor`), mirroring the HF module tree and
//! weight names, plus `family.rs`, its implementation of the [`family`] traits; the CLIP vision
//! tower is shared by the families that use it. A family is registered in one place, the
//! `families!` list below (docs/model-families.md).

pub mod clip;
pub mod family;
pub mod llava;
pub mod llava_next;
pub mod qwen2_5_vl;

pub use family::{Family, FamilyModel, FamilyProcessor};

/// The registry: declares [`VlModel`] with one variant per family and what dispatches over them.
macro_rules! families {
    ($($(#[$doc:meta])* $variant:ident($model:ty),)*) => {
        /// A loaded vision-language model of any registered family.
        pub enum VlModel {
            $($(#[$doc])* $variant(Box<$model>),)*
        }

        /// Model families horizon runs, by HF `model_type`.
        pub const SUPPORTED_MODEL_TYPES: &[&str] = &[$(<$model as Family>::MODEL_TYPE,)*];

        impl VlModel {
            /// The loaded family's model.
            pub fn family(&self) -> &dyn FamilyModel {
                match self {
                    $(Self::$variant(m) => m.as_ref(),)*
                }
            }

            pub fn model_type(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => <$model as Family>::MODEL_TYPE,)*
                }
            }

            /// Loads the family whose `model_type` is `model_type` with `load`; `None` if no
            /// registered family has it.
            pub(crate) fn load_family(
                model_type: &str,
                load: crate::model::FamilyLoader,
            ) -> Option<anyhow::Result<Self>> {
                match model_type {
                    $(t if t == <$model as Family>::MODEL_TYPE => {
                        Some(load.load::<$model>().map(|m| Self::$variant(Box::new(m))))
                    })*
                    _ => None,
                }
            }
        }
    };
}

families! {
    /// LLaVA-1.5 (`model_type` `llava`).
    Llava(llava::LlavaForConditionalGeneration),
    /// LLaVA-NeXT (`llava_next`).
    LlavaNext(llava_next::LlavaNextForConditionalGeneration),
    /// Qwen2.5-VL (`qwen2_5_vl`).
    Qwen2_5Vl(qwen2_5_vl::Qwen2_5VlForConditionalGeneration),
}

use anyhow::{bail, Result};
use tch::{Kind, Tensor};

/// Token embeddings `[1, S, D]` with the image `features` `[N, D]` scattered, in order, into the
/// positions of `input_ids` that hold `image_token_id` (HF's `masked_scatter` merge); the counts
/// must agree.
pub fn scatter_image_features(
    embeds: &Tensor,
    input_ids: &Tensor,
    image_token_id: i64,
    features: &Tensor,
) -> Result<Tensor> {
    let features = features.to_kind(embeds.kind());
    let mask = input_ids.eq(image_token_id);
    let n_tokens = mask.sum(Kind::Int64).int64_value(&[]);
    let n_features = features.size()[0];
    if n_tokens != n_features {
        bail!(
            "the prompt has {n_tokens} image tokens (id {image_token_id}) but the image gives {n_features} features"
        );
    }
    let mask = mask.unsqueeze(-1).expand_as(embeds);
    Ok(embeds.masked_scatter(&mask, &features))
}

#[cfg(test)]
mod tests {
    use super::SUPPORTED_MODEL_TYPES;

    /// A `model_type` registered twice would load as whichever family comes first.
    #[test]
    fn each_model_type_is_registered_once() {
        for (i, t) in SUPPORTED_MODEL_TYPES.iter().enumerate() {
            assert!(
                !SUPPORTED_MODEL_TYPES[..i].contains(t),
                "model_type {t} is registered twice"
            );
        }
    }
}
