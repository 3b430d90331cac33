//! The tokenizer of the bundled small models: a closed-vocabulary WordLevel tokenizer over the synthetic
//! benchmark's prompts and answers, saved as a standard `tokenizer.json` that HF loads unchanged.
//!
//! Pre-tokenization: Metaspace (`▁`, prepend on the first section, split on spaces), then every capital
//! letter or digit is isolated, with its leading `▁` if it has one, then punctuation is isolated. So the
//! text-reading answer `K7P` becomes `▁K 7 P` (one glyph per token: reading stays fine-grained) while the
//! first token of every answer (`▁K`, `▁red`, `▁yes`, `▁3`) names the answer — the information target
//! y of the reference procedure is an answer's first token, which must not be a bare `▁`.

use anyhow::{anyhow, Result};
use std::collections::{BTreeSet, HashMap};
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::punctuation::Punctuation;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer,
    SplitDelimiterBehavior, Tokenizer,
};

/// Special tokens and their fixed ids.
pub const UNK: (&str, u32) = ("<unk>", 0);
pub const BOS: (&str, u32) = ("<s>", 1);
pub const EOS: (&str, u32) = ("</s>", 2);
pub const PAD: (&str, u32) = ("<pad>", 3);
pub const IMAGE: (&str, u32) = ("<image>", 4);

fn pre_tokenizer() -> Result<PreTokenizerWrapper> {
    pre_tokenizer_with(PrependScheme::First)
}

/// `prepend` is `First` in the saved tokenizer; `Never` reproduces how it treats a text section that
/// follows a special token (only the first section of an input gets the `▁`).
fn pre_tokenizer_with(prepend: PrependScheme) -> Result<PreTokenizerWrapper> {
    let isolate_glyphs = Split::new(
        SplitPattern::Regex("▁?[A-Z0-9]".into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| anyhow!("glyph split pattern: {e}"))?;
    Ok(Sequence::new(vec![
        Metaspace::new('▁', prepend, true).into(),
        isolate_glyphs.into(),
        Punctuation::new(SplitDelimiterBehavior::Isolated).into(),
    ])
    .into())
}

/// The pieces `text` pre-tokenizes into (as one section, i.e. the first after a special token or none).
fn pieces(pre: &PreTokenizerWrapper, text: &str) -> Result<Vec<String>> {
    let mut pts = PreTokenizedString::from(text);
    pre.pre_tokenize(&mut pts)
        .map_err(|e| anyhow!("pre-tokenizing {text:?}: {e}"))?;
    Ok(pts
        .get_splits(OffsetReferential::Original, OffsetType::Byte)
        .into_iter()
        .map(|(s, _, _)| s.to_string())
        .collect())
}

/// Builds the tokenizer whose vocabulary covers every piece of `texts` (the text around special
/// tokens: pass prompt sections and answers separately, as they are tokenized). Deterministic: the
/// vocabulary is the special tokens followed by the sorted pieces.
pub fn build_tokenizer<'a>(texts: impl IntoIterator<Item = &'a str>) -> Result<Tokenizer> {
    let pre = pre_tokenizer()?;
    let later = pre_tokenizer_with(PrependScheme::Never)?;
    let mut set = BTreeSet::new();
    for t in texts {
        // As the first section of an input, and as a section after a special token such as <image>.
        set.extend(pieces(&pre, t)?);
        set.extend(pieces(&later, t)?);
    }
    let specials = [UNK, BOS, EOS, PAD, IMAGE];
    let mut vocab: HashMap<String, u32> =
        specials.iter().map(|(t, i)| (t.to_string(), *i)).collect();
    for piece in set {
        let next = vocab.len() as u32;
        vocab.entry(piece).or_insert(next);
    }
    let model = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token(UNK.0.into())
        .build()
        .map_err(|e| anyhow!("building the word-level model: {e}"))?;
    let mut tok = Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(pre));
    let decoder: DecoderWrapper = Metaspace::new('▁', PrependScheme::First, true).into();
    tok.with_decoder(Some(decoder));
    let post = TemplateProcessing::builder()
        .try_single(format!("{} $A", BOS.0))
        .map_err(|e| anyhow!("template: {e}"))?
        .special_tokens(vec![(BOS.0, BOS.1)])
        .build()
        .map_err(|e| anyhow!("template: {e}"))?;
    tok.with_post_processor(Some(post));
    tok.add_special_tokens(specials.map(|(t, _)| AddedToken::from(t, true)))
        .map_err(|e| anyhow!("adding special tokens: {e}"))?;
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glyphs_split_and_answers_keep_an_informative_first_token() {
        let tok = build_tokenizer([
            "USER: ",
            "\nWhat is the text in the image? ASSISTANT: K7P",
            "K7P",
            "red",
        ])
        .unwrap();
        let enc = tok.encode("K7P", false).unwrap();
        assert_eq!(enc.get_tokens(), &["▁K", "7", "P"]);
        assert_eq!(tok.encode("red", false).unwrap().get_tokens(), &["▁red"]);
        let prompt = tok
            .encode(
                "USER: <image><image>\nWhat is the text in the image? ASSISTANT: K7P",
                true,
            )
            .unwrap();
        let ids = prompt.get_ids();
        assert_eq!(ids[0], BOS.1);
        assert_eq!(ids.iter().filter(|&&i| i == IMAGE.1).count(), 2);
        assert!(!ids.contains(&UNK.1), "{:?}", prompt.get_tokens());
        assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), "K7P");
    }
}
