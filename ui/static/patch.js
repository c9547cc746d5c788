watch('value', () => { if (window.gal.applyPatch) window.gal.applyPatch(props.value); });
