from dla_repro import plots, tracking


def test_provenance_names_data_profile_epochs_seeds_and_hardware():
    text = plots.provenance("synthetic (digest ab12)", profile="quick", epochs=4, seeds=[0, 1])
    assert text.startswith("data: synthetic (digest ab12) · profile: quick · 4 epochs · seeds 0,1 · ")
    assert text.endswith(tracking.hardware_label())
    assert "1 epoch ·" in plots.provenance("x", profile="smoke", epochs=1, seeds=3)
