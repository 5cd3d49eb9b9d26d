//! Running any MatFormer slice of a loaded model allocates no weight memory: the FFN
//! prefixes and the kept layers' PLE rows are views of the stored weights. This test is
//! alone in its binary because it reads a process-wide allocation counter.

use std::path::PathBuf;

use gemma3n_compute::storage::owned_bytes_allocated;
use gemma3n_model::matformer::Slice;
use gemma3n_model::{Checkpoint, Logits, TextModel};

#[test]
fn slices_allocate_no_weight_memory() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/matformer");
    let ckpt = Checkpoint::open(&root.join("base")).unwrap();
    let model = TextModel::load(&ckpt, &mut |_, _| {}).unwrap();
    let mut names: Vec<PathBuf> = std::fs::read_dir(root.join("slices"))
        .unwrap()
        .map(|e| e.unwrap().path().join("slice.json"))
        .collect();
    names.sort();
    let before = owned_bytes_allocated();
    for p in &names {
        let slice = Slice::from_file(p).unwrap();
        let mut cache = model.new_cache_for(&slice).unwrap();
        model
            .forward(&[2, 17, 99, 5, 230, 41], &mut cache, Logits::All)
            .unwrap();
        for t in [12u32, 250, 3] {
            model.forward(&[t], &mut cache, Logits::Last).unwrap();
        }
    }
    assert_eq!(
        owned_bytes_allocated(),
        before,
        "running slices allocated weight memory"
    );
    // The counter does count owned weights: a quantized copy is one.
    let _q = model.weights.layers[0]
        .gate_proj
        .quantize(gemma3n_compute::DType::Q8_0);
    assert!(owned_bytes_allocated() > before);
}
