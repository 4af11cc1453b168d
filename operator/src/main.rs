fn main() {
    for (file, crd) in aleph_crds::all_crds() {
        std::fs::write(format!("crds/{file}"), aleph_crds::crd_yaml(&crd).unwrap()).unwrap();
    }
}
