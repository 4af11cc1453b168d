//! A tiny GGUF model that the tests write themselves: a two-layer Llama with
//! random weights and a small SentencePiece vocabulary, small enough to load
//! in milliseconds on a CPU, real enough that llama.cpp loads it and generates
//! tokens (nonsense ones). Nothing here can be downloaded from a model hub.
//!
//! The file follows the GGUF v3 layout that llama.cpp reads: the header, the
//! metadata (architecture hyper-parameters, tokenizer, chat template), the
//! tensor infos, then the F32 tensor data, each aligned to 32 bytes.

/// The GGUF value types used here, by their numbers in the format.
#[derive(Clone, Copy)]
#[repr(u32)]
enum ValueType {
    Uint32 = 4,
    Int32 = 5,
    Float32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
}
/// The tensor type F32.
const TENSOR_F32: u32 = 0;
/// `general.alignment`'s default.
const ALIGNMENT: usize = 32;

/// SentencePiece token types.
const TOKEN_NORMAL: i32 = 1;
const TOKEN_UNKNOWN: i32 = 2;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_BYTE: i32 = 6;

/// The word pieces of the vocabulary (after the control and byte tokens).
const WORDS: &[&str] = &[
    "▁",
    "▁the",
    "▁a",
    "▁model",
    "▁aleph",
    "▁hello",
    "▁world",
    "▁is",
    "▁of",
    "▁to",
    "▁and",
    "▁in",
    "▁on",
    "▁GPU",
    "▁serve",
    "▁token",
    "▁cluster",
    "▁node",
    "▁pod",
    "▁tenant",
    ".",
    ",",
    "!",
    "?",
    "a",
    "b",
    "c",
    "d",
    "e",
    "f",
    "g",
    "h",
    "i",
    "j",
    "k",
    "l",
    "m",
    "n",
    "o",
    "p",
    "q",
    "r",
    "s",
    "t",
    "u",
    "v",
    "w",
    "x",
    "y",
    "z",
    "A",
    "B",
    "C",
    "D",
    "E",
    "0",
    "1",
    "2",
    "3",
];

/// A ChatML template, rendered by llama.cpp's Jinja engine.
const CHAT_TEMPLATE: &str = "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// The shape of the model.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Embedding width.
    pub embd: usize,
    /// Feed-forward width.
    pub ff: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Trained context length (the engine's default context).
    pub context: u32,
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            embd: 64,
            ff: 128,
            layers: 2,
            heads: 4,
            context: 512,
        }
    }
}

/// A deterministic generator of weights (xorshift64*), so that the same seed
/// writes the same file.
struct Weights(u64);

impl Weights {
    fn next(&mut self) -> f32 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        let bits = x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
        // Uniform in [-1, 1).
        (bits as f32 / (1u64 << 23) as f32) - 1.0
    }
}

struct Writer {
    out: Vec<u8>,
    /// Metadata entries written so far.
    kvs: u64,
}

impl Writer {
    fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn string(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.out.extend_from_slice(s.as_bytes());
    }
    fn key(&mut self, key: &str, kind: ValueType) {
        self.kvs += 1;
        self.string(key);
        self.u32(kind as u32);
    }
    fn kv_u32(&mut self, key: &str, v: u32) {
        self.key(key, ValueType::Uint32);
        self.u32(v);
    }
    fn kv_f32(&mut self, key: &str, v: f32) {
        self.key(key, ValueType::Float32);
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn kv_bool(&mut self, key: &str, v: bool) {
        self.key(key, ValueType::Bool);
        self.out.push(u8::from(v));
    }
    fn kv_str(&mut self, key: &str, v: &str) {
        self.key(key, ValueType::String);
        self.string(v);
    }
    fn kv_array_header(&mut self, key: &str, item: ValueType, len: usize) {
        self.key(key, ValueType::Array);
        self.u32(item as u32);
        self.u64(len as u64);
    }
    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(ALIGNMENT) {
            self.out.push(0);
        }
    }
}

/// One tensor: its name, dimensions (innermost first, as GGUF stores them)
/// and values.
struct Tensor {
    name: String,
    dims: Vec<usize>,
    data: Vec<f32>,
}

/// The vocabulary: tokens, scores and types.
fn vocabulary() -> (Vec<String>, Vec<f32>, Vec<i32>) {
    let mut tokens = vec!["<unk>".to_string(), "<s>".to_string(), "</s>".to_string()];
    let mut types = vec![TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_CONTROL];
    let mut scores = vec![0.0, 0.0, 0.0];
    for byte in 0..=255u8 {
        tokens.push(format!("<0x{byte:02X}>"));
        types.push(TOKEN_BYTE);
        scores.push(0.0);
    }
    for (i, word) in WORDS.iter().enumerate() {
        tokens.push((*word).to_string());
        types.push(TOKEN_NORMAL);
        // Longer pieces first when the tokenizer merges.
        scores.push(-(i as f32) / 100.0 + word.chars().count() as f32);
    }
    (tokens, scores, types)
}

/// A tiny Llama GGUF with random weights drawn from `seed`, named `name`
/// (`general.name`). Different seeds give different models: their greedy
/// completions of one prompt differ.
pub fn tiny_llama(name: &str, seed: u64, shape: Shape) -> Vec<u8> {
    let (tokens, scores, types) = vocabulary();
    let vocab = tokens.len();
    let first_word = 3 + 256;
    let mut rng = Weights(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut random =
        |n: usize, scale: f32| -> Vec<f32> { (0..n).map(|_| rng.next() * scale).collect() };
    let e = shape.embd;
    let mut tensors = vec![Tensor {
        name: "token_embd.weight".into(),
        dims: vec![e, vocab],
        data: random(e * vocab, 1.0),
    }];
    for layer in 0..shape.layers {
        let blk = |part: &str| format!("blk.{layer}.{part}.weight");
        tensors.push(Tensor {
            name: blk("attn_norm"),
            dims: vec![e],
            data: vec![1.0; e],
        });
        for part in ["attn_q", "attn_k", "attn_v", "attn_output"] {
            tensors.push(Tensor {
                name: blk(part),
                dims: vec![e, e],
                data: random(e * e, 0.1),
            });
        }
        tensors.push(Tensor {
            name: blk("ffn_norm"),
            dims: vec![e],
            data: vec![1.0; e],
        });
        for part in ["ffn_gate", "ffn_up"] {
            tensors.push(Tensor {
                name: blk(part),
                dims: vec![e, shape.ff],
                data: random(e * shape.ff, 0.1),
            });
        }
        tensors.push(Tensor {
            name: blk("ffn_down"),
            dims: vec![shape.ff, e],
            data: random(shape.ff * e, 0.1),
        });
    }
    tensors.push(Tensor {
        name: "output_norm.weight".into(),
        dims: vec![e],
        data: vec![1.0; e],
    });
    // The output projection: word pieces get strong random logits; control and
    // byte tokens none, so that generation yields words (valid UTF-8) and runs
    // to max_tokens rather than stopping at a random end-of-sequence.
    let mut output = random(e * vocab, 1.0);
    for row in output.chunks_mut(e).take(first_word) {
        row.fill(0.0);
    }
    tensors.push(Tensor {
        name: "output.weight".into(),
        dims: vec![e, vocab],
        data: output,
    });

    let mut w = Writer {
        out: Vec::new(),
        kvs: 0,
    };
    w.out.extend_from_slice(b"GGUF");
    w.u32(3);
    w.u64(tensors.len() as u64);
    // The metadata count, filled in once the entries are written.
    let kv_count_at = w.out.len();
    w.u64(0);
    w.kv_str("general.architecture", "llama");
    w.kv_str("general.name", name);
    w.kv_u32("general.alignment", ALIGNMENT as u32);
    w.kv_u32("general.file_type", 0);
    w.kv_u32("llama.context_length", shape.context);
    w.kv_u32("llama.embedding_length", e as u32);
    w.kv_u32("llama.block_count", shape.layers as u32);
    w.kv_u32("llama.feed_forward_length", shape.ff as u32);
    w.kv_u32("llama.attention.head_count", shape.heads as u32);
    w.kv_u32("llama.attention.head_count_kv", shape.heads as u32);
    w.kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5);
    w.kv_u32("llama.rope.dimension_count", (e / shape.heads) as u32);
    w.kv_u32("llama.vocab_size", vocab as u32);
    w.kv_str("tokenizer.ggml.model", "llama");
    w.kv_array_header("tokenizer.ggml.tokens", ValueType::String, vocab);
    for token in &tokens {
        w.string(token);
    }
    w.kv_array_header("tokenizer.ggml.scores", ValueType::Float32, vocab);
    for score in &scores {
        w.out.extend_from_slice(&score.to_le_bytes());
    }
    w.kv_array_header("tokenizer.ggml.token_type", ValueType::Int32, vocab);
    for kind in &types {
        w.out.extend_from_slice(&kind.to_le_bytes());
    }
    w.kv_u32("tokenizer.ggml.bos_token_id", 1);
    w.kv_u32("tokenizer.ggml.eos_token_id", 2);
    w.kv_u32("tokenizer.ggml.unknown_token_id", 0);
    w.kv_bool("tokenizer.ggml.add_bos_token", true);
    w.kv_str("tokenizer.chat_template", CHAT_TEMPLATE);

    let kvs = w.kvs.to_le_bytes();
    w.out[kv_count_at..kv_count_at + 8].copy_from_slice(&kvs);

    let mut offset = 0usize;
    for t in &tensors {
        w.string(&t.name);
        w.u32(t.dims.len() as u32);
        for d in &t.dims {
            w.u64(*d as u64);
        }
        w.u32(TENSOR_F32);
        w.u64(offset as u64);
        offset += t.data.len() * 4;
        offset = offset.div_ceil(ALIGNMENT) * ALIGNMENT;
    }
    w.pad();
    for t in &tensors {
        for v in &t.data {
            w.out.extend_from_slice(&v.to_le_bytes());
        }
        w.pad();
    }
    w.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_deterministic_and_seeds_differ() {
        let a = tiny_llama("a", 1, Shape::default());
        assert_eq!(a, tiny_llama("a", 1, Shape::default()));
        assert_ne!(a, tiny_llama("a", 2, Shape::default()));
        assert_eq!(&a[..4], b"GGUF");
        assert_eq!(a.len() % ALIGNMENT, 0);
    }
}
