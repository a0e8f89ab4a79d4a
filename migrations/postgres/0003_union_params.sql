-- Observation's combo-* search parameters are answered from the rows of the
-- parameters they join (combo-code from code and component-code, …; see
-- UNIONS in src/fhir/search/params.rs) and get no rows of their own any
-- more: the copies written before are removed.
DELETE FROM idx_token WHERE param IN ('combo-code', 'combo-data-absent-reason', 'combo-value-concept');
DELETE FROM idx_quantity WHERE param = 'combo-value-quantity';
